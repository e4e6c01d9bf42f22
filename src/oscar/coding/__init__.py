"""Coding: images to indices to bytes and back (the codec, the file format, the index coders
and their priors, the encoder's index search)."""
