"""Drivers for third-party IKEv2 peers (strongSwan charon, OpenIKED) used in tests.

Nothing here is part of pyike itself: these modules start real peers inside the
network namespaces of ``tests/netns.py`` so pyike can be checked against them.
"""
