"""Model storage: model directories, diffusers folders, safe building from untrusted files, and
the converter for the original release's checkpoint.

Kept free of imports: ``oscar.store.model_files`` is on the CLI's start-up path."""
