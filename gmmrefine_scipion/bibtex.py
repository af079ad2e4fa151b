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

@article{Chen2021,
title = "Deep learning-based mixed-dimensional Gaussian mixture model for characterizing variability in cryo-EM",
journal = "Nature Methods",
volume = "18",
pages = "930--936",
year = "2021",
doi = "http://dx.doi.org/10.1038/s41592-021-01220-5",
author = "Chen, Muyuan and Ludtke, Steven J.",
}

@article{Chen2023,
title = "Integrating molecular models into cryoEM heterogeneity analysis using scalable high-resolution deep Gaussian mixture models",
journal = "Journal of Molecular Biology",
volume = "435",
pages = "168014",
year = "2023",
doi = "http://dx.doi.org/10.1016/j.jmb.2023.168014",
author = "Chen, Muyuan and Toader, Bogdan and Lederman, Roy",
}
"""
