"""Anomaly detectors over window features: the models and the math.

Knows nothing of Kafka, faust or the network (numpy, scikit-learn, torch, river
only). The detectors arrive with the features-and-detectors issue; the stream
pipeline (stream.pipeline.AssetPipeline) is where they plug in.
"""
