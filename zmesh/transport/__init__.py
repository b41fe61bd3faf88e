"""How bytes reach a peer: ZeroMQ endpoints (endpoint.py, checked wherever one enters),
multipart send and receive on pyzmq's C-level methods (sockets.py, the hot paths), and CurveZMQ
key files and the allow-list (keys.py). Used by the broker and the clients alike; nothing here
knows an op."""
