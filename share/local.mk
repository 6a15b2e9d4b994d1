# SPDX-License-Identifier: MIT
# The bundled models and the graph files of the reference models, installed
# under $(pkgdatadir)/models.
modelsdir = $(pkgdatadir)/models
dist_models_DATA = share/models/README
storydir = $(modelsdir)/story
dist_story_DATA = share/models/story/model.bin share/models/story/tokenizer.bin \
	share/models/story/expected_greedy.txt
digitsdir = $(modelsdir)/digits
dist_digits_DATA = share/models/digits/digits.json share/models/digits/digits.safetensors \
	share/models/digits/test_images.u8 share/models/digits/test_labels.u8 \
	share/models/digits/ARCH.md
mnistdir = $(modelsdir)/mnist
dist_mnist_DATA = share/models/mnist/mnist.json
cifardir = $(modelsdir)/cifar
dist_cifar_DATA = share/models/cifar/resnet20.json share/models/cifar/resnet56.json

# Scripts that made the models, the quick start and the demo.
EXTRA_DIST += scripts/quickstart.sh scripts/demo.sh scripts/make_graphs.py \
	scripts/make_hf_refs.py scripts/make_synthetic_llama.py scripts/train_digits.py \
	scripts/train_story_model.py
