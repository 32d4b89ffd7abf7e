"""
twistchat-bench (L{twistchat.bench.cli}): measure a twistchat relay.

One job a module: L{processes} starts servers and other children and waits
for them, L{measure} reads CPU time and memory from /proc, L{config} holds a
run's settings, L{relay}, L{hardening} and L{history} are the scenarios
(L{load} and L{clients} are the member processes they drive), L{results}
merges and tabulates results and L{plot} draws them. L{baselines} are the
relays twistchat is compared with.
"""
