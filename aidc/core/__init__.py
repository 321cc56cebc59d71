"""aidc's core: the site file's schema and topology, canonical metrics, the stores and the
site model on numpy arrays. It imports nothing above it (collectors, alerts, the runtime,
the web or the CLI): those import it."""
