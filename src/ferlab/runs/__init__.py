"""What a run leaves on disk and reads back: atomic writes, metrics.json and failed.json, the version stamp,
stored configs (the trust boundary), the device."""
