"""Physics of SMLM images: PSF, camera, simulation and the Cramer-Rao bound (numpy only)."""
