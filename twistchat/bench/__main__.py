from twistchat.bench.cli import run

run()
