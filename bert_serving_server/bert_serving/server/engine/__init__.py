"""The engine: text in, arrays out. Everything that knows about BERT and TensorFlow lives here.

Modules, one role each:
    tokenization  WordPiece tokenizer
    features      input layout: [CLS] a [SEP] b [SEP], truncation, padding
    checkpoint    finds and reads model files (Google or Hugging Face layout)
    modeling      builds the inference graph (layers, pooling, heads)
    graph         freezes, optimises, caches and runs the graph
    devices       which device each worker uses, CPU threads and features
    encoder       Encoder: the in-process API over all of the above
"""
__all__ = []
