"""
``python -m twistchat.client HOST PORT [PASSWORD] USERNAME``
"""

from twistchat.client.cli import run

run()
