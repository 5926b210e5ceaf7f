"""`dalle serve`: an HTTP API and a web page over one worker that owns the model."""
