"""scikit-learn's 8x8 handwritten digits: the embedded, offline training set of the DDIM stage.

The 1797 images ship inside scikit-learn (``sklearn.datasets.load_digits``), so nothing is
downloaded. They are split once, by a seeded permutation, into

* ``ddpm``   the images the small DDPM is trained on;
* ``clf``    more images the recognisability classifier (the reader) is fitted on, with ``ddpm``;
* ``test``   held-out images its accuracy is measured on, and the real reference set of the
             Frechet distance (held out from both the DDPM and the reader).

The classifier sees images the way it will see samples: 16x16 (or any ``image_size``) in
[-1, 1], average-pooled back to 8x8. Its mean top-class probability on generated samples is the
"recognisability" score of a sampler: quality vs. number of steps as a number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_report.io import make_generator

SPLIT_FRACTIONS = (0.6, 0.2)  # ddpm, clf; the rest is test
HIDDEN = (128, 32)  # the reader's hidden layer widths; the last is the Frechet-distance feature space
CONFIDENT = 0.9  # a sample is "confidently classified" when the reader's top-class p >= this


def load_digits_tensor() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as images in [-1, 1], shape (N, 1, 8, 8) float32, and labels, shape (N,) int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(np.asarray(data.images, dtype=np.float32))  # values 0..16
    images = images / 8.0 - 1.0
    return images[:, None], torch.from_numpy(np.asarray(data.target, dtype=np.int64))


def resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) images to (N, C, image_size, image_size)."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)


def split_indices(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded split of range(n) into ``ddpm``, ``clf`` and ``test`` index sets."""
    perm = torch.randperm(n, generator=make_generator(seed, "digits_split"))
    n_ddpm = int(round(SPLIT_FRACTIONS[0] * n))
    n_clf = int(round(SPLIT_FRACTIONS[1] * n))
    return {"ddpm": perm[:n_ddpm], "clf": perm[n_ddpm : n_ddpm + n_clf], "test": perm[n_ddpm + n_clf :]}


def digits_split(image_size: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"ddpm"|"clf"|"test": (images (N, 1, image_size, image_size) in [-1, 1], labels (N,))}``."""
    images, labels = load_digits_tensor()
    images = resize(images, image_size).clamp(-1.0, 1.0)
    return {k: (images[idx], labels[idx]) for k, idx in split_indices(len(labels), seed).items()}


def classifier_features(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) images in [-1, 1] -> (N, 64) features: clipped, average-pooled to 8x8, float64."""
    x = images.detach().to("cpu", torch.float32).clamp(-1.0, 1.0)
    if x.shape[1] != 1:
        raise ValueError(f"the digits classifier needs 1-channel images, got shape {tuple(x.shape)}")
    x = F.adaptive_avg_pool2d(x, (8, 8))
    return x.reshape(x.shape[0], -1).numpy().astype(np.float64)


@dataclass
class DigitsClassifier:
    """A small MLP digit classifier on 8x8 features (hidden widths ``HIDDEN``), fitted on real digits.

    It reads samples the way a person would judge them: its top-class probability is the
    "recognisability" of an image, and its last hidden layer (``HIDDEN[-1]`` ReLU units) is the
    feature space of the Frechet distance ("FID on classifier features", not FID: no Inception).
    """

    model: object
    test_accuracy: float
    n_train: int
    n_test: int

    def predict_proba(self, images: torch.Tensor) -> np.ndarray:
        """Class probabilities, shape (N, 10), for (N, 1, H, W) images in [-1, 1]."""
        return self.model.predict_proba(classifier_features(images))

    def features(self, images: torch.Tensor) -> np.ndarray:
        """Penultimate-layer activations, shape (N, HIDDEN[-1]) float64, for (N, 1, H, W) images in [-1, 1]."""
        h = classifier_features(images)
        for w, b in zip(self.model.coefs_[:-1], self.model.intercepts_[:-1]):
            h = np.maximum(h @ w + b, 0.0)  # sklearn's MLP hidden layers: ReLU(h W + b)
        return h

    def recognisability(self, images: torch.Tensor, threshold: float = CONFIDENT) -> dict[str, float]:
        """Mean top-class probability and the fraction of images classified with p >= threshold."""
        p = self.predict_proba(images).max(axis=1)
        return {"recognisability": float(p.mean()), "confident_fraction": float((p >= threshold).mean())}


def train_classifier(image_size: int, seed: int) -> DigitsClassifier:
    """Fit the reader on the ``ddpm`` and ``clf`` splits (real digits); measure accuracy on ``test``.

    Deterministic: the MLP's initial weights and batch order come from ``random_state``, derived
    from the master seed. The ``test`` split is held out from both the DDPM and this classifier.
    """
    from sklearn.neural_network import MLPClassifier

    from diffusion_report.io import derive_seed

    split = digits_split(image_size, seed)
    x_fit = torch.cat([split["ddpm"][0], split["clf"][0]])
    y_fit = torch.cat([split["ddpm"][1], split["clf"][1]])
    x_test, y_test = split["test"]
    model = MLPClassifier(hidden_layer_sizes=HIDDEN, alpha=1e-3, max_iter=1000,
                          random_state=derive_seed(seed, "digits_classifier") % (2**32))
    model.fit(classifier_features(x_fit), y_fit.numpy())
    acc = float((model.predict(classifier_features(x_test)) == y_test.numpy()).mean())
    return DigitsClassifier(model=model, test_accuracy=acc, n_train=len(y_fit), n_test=len(y_test))
