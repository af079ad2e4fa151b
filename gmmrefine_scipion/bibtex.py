# -*- coding: utf-8 -*-
"""
@article{Chen2024,
title = "Improving resolution and resolvability of single-particle cryoEM structures using Gaussian mixture models",
journal = "Nature Methods",
volume = "21",
pages = "37--40",
year = "2024",
doi = "http://dx.doi.org/10.1038/s41592-023-02082-9",
author = "Chen, Muyuan and Schmid, Michael F. and Chiu, Wah",
}
"""
