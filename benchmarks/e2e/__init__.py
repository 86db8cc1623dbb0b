"""End-to-end benchmarks: a uvicorn server process and a load-client process over loopback."""
