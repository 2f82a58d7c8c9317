"""Models: building, training, saving and loading them, and the readers that measure their output.

ddpm (the digits UNet, any pretrained DDPM), t2i and text2image (the shapes text-to-image model,
Stable Diffusion), loading (one loader for hub ids and folders), training (the DDPM loop with EMA),
and the data and readers: digits, shapes, attributes. Imports only :mod:`diffusion_report.core`.
"""
