"""SHLS (Mendonça, Fontinele, Oliveira; BMVC'23): superpixel features, memory clustering, segmenter.

Networks: `backbone.SHLSBackbone` (a ResNet-18-like encoder without max pool, output stride 4),
`superfeatures.SuperfeatureHead` (per-superpixel embeddings) and `segmenter_net.SegmentationNet`
(the memory-select gate and the refinement decoder, one object per batch element).
"""
