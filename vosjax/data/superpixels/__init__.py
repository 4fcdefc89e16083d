"""Superpixel label maps (SLIC, ISEC) computed on the CPU with numpy and OpenCV."""
