"""ocifs: mount an OCI image layout read-only with FUSE, straight from its layer blobs."""

__version__ = "0.1.0"
