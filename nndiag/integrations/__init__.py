"""nndiag inside other libraries' training loops: ``nndiag.integrations.lightning`` (a
PyTorch Lightning callback) and ``nndiag.integrations.transformers`` (a Hugging Face
``TrainerCallback``). Each imports its library; nndiag itself needs neither."""
