"""feq_lab.streaming: the real-time monitor.

engine (rolling buffers, 60-s windows, stacking, events), sources (replay, files, SeedLink),
predictors (torch, onnxruntime, Monte-Carlo), outputs (JSON lines, picks CSV/QuakeML/SC3ML,
the event lifecycle), publish/subscribe (ZeroMQ on 127.0.0.1), display
(the live plot), monitor (the loop and the replay scoring). Test servers and helpers live in
tests/streaming/.
Nothing is imported here, so the onnxruntime monitor never loads torch or matplotlib.
"""
