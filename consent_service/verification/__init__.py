"""Cameo verification: media checks, liveness, and the face, voice and digit models behind narrow interfaces.

Heavy libraries (torch, dlib, onnxruntime, insightface, speechbrain, pocketsphinx) are imported
only inside the module of the model that needs them.
"""
