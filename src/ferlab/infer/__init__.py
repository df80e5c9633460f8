"""Inference on the user's own media: face detection, input conversion, backends, drawing, video, export.

Frames are OpenCV BGR uint8 arrays (H, W, 3) throughout; a model's input is made from them in one place
(`preprocess.py`) for PyTorch, TorchScript and ONNX Runtime alike.
"""
