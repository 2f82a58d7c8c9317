"""diffusion_report: the logic behind the diffusion-report Snakemake workflow, in four layers.

Each layer imports only the layers before it (``tests/test_layers.py`` checks every import):

* ``core``    the maths as pure functions named after the papers: schedules, q_sample and the
              posterior, the DDIM/DDPM samplers and inversion, prompt-to-prompt's attention control.
* ``models``  building, training, saving and loading models (the digits DDPM, the shapes
              text-to-image model, pretrained ones from the hub or a folder) and the readers.
* ``stages``  one module per workflow stage and one function per rule, named after the rule,
              taking paths and values; the scripts in ``scripts/`` only call them.
* ``report``  each report section built from its stage's artifacts (CSV, PNG, JSON), LaTeX to HTML,
              and the HTML and PDF renderers; never imports torch or diffusers.

Below them all: ``io`` (atomic writes, safetensors, seeded generators, the rule runner),
``images``, ``metrics``, ``figures`` and ``lock``; ``config`` checks the config before any job;
``testing`` builds the tiny models the tests and benchmarks use.
"""

__version__ = "0.2.0"
