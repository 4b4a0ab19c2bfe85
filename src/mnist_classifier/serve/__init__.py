"""`mnist serve`: an HTTP API and a drawing page in front of one model loaded at start.

`app.py` builds the FastAPI app from a predictor and the model's identity (so tests need no
server); `loading.py` loads that model from a checkpoint, a registry stage or an ONNX export;
`limits.py` holds every bound on requests and work; `server.py` runs uvicorn with them;
`static/index.html` is the self-contained drawing page served at `/`.
"""
