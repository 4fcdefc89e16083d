"""Superpixel label maps (SLIC, ISEC) on the CPU with numpy, scipy and OpenCV, pixel-exact with
the code SHLS released (scikit-image 0.26 SLIC; isec_py/isec.py)."""
