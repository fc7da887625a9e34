"""The engine: text in, arrays out. Everything that knows about BERT and TensorFlow lives here.

Modules, one role each (floors from the top; `.importlinter` keeps them so):
    factory       create_engine: picks the Encoder or the FakeEngine a worker runs
    encoder       Encoder: the in-process API over everything below
    fake          FakeEngine: a few lines of numpy that stand in for the model in tests
    base          Engine: the interface both implement
    devices       which device each worker uses, its CPU threads and batch-token budget
    runner        GraphRunner: runs a frozen graph in a TensorFlow session
    graph         freezes, optimises and caches the graph on disk
    modeling      builds the inference graph (layers, pooling, heads)
    features      input layout: [CLS] a [SEP] b [SEP], truncation, padding
    checkpoint    finds and reads model files (Google or Hugging Face layout)
    tokenization  WordPiece tokenizer
    tfimport      imports TensorFlow without Keras and, until read, its public API (a worker's and
                  the graph builder's start-up)
"""
__all__ = []
