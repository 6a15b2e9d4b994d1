#!/bin/sh
# The vision graph files against the stored reference accuracies: MNIST CNN
# 9916/10000, ResNet20 4051/5000, ResNet56 4151/5000 (SOURCE.md); a count
# more than 2 images away is a bug (float summation order may flip a
# near-tie).  MNIST also split into stage archives.
. "$(dirname "$0")/lib.sh"
need_data mnist_cnn_jsgrad
need_data mnist_t10k
need_data cifar10_resnet_akamaster
need_data cifar10_test_jpeg_subset
M=$NESA_MODELS
mn=$NESA_DATA/mnist_t10k
cf=$NESA_DATA/cifar10_test_jpeg_subset

# check LABEL WANT JSONFILE
check() {
	got=$(jq -r .correct "$3")
	[ -n "$got" ] && [ "$got" -ge $(($2 - 2)) ] && [ "$got" -le $(($2 + 2)) ] ||
		fail_ "$1: $got correct, expected $2 +- 2"
}

expect_exit 0 nesa-route -t 1 --format json -m "$M/mnist/mnist.json" \
	--weights "$NESA_DATA/mnist_cnn_jsgrad/mnist.safetensors" \
	--classify "$mn/t10k-images-idx3-ubyte.gz" "$mn/t10k-labels-idx1-ubyte.gz" &&
	check mnist 9916 "$T/out"

expect_exit 0 nesa-partition -o "$T/mp" --split 2 \
	--weights "$NESA_DATA/mnist_cnn_jsgrad/mnist.safetensors" "$M/mnist/mnist.json"
expect_exit 0 nesa-route -t 1 --format json -m "$T/mp/stage-00.nsa" -m "$T/mp/stage-01.nsa" \
	--classify "$mn/t10k-images-idx3-ubyte.gz" "$mn/t10k-labels-idx1-ubyte.gz" &&
	check "mnist in 2 stages" 9916 "$T/out"

for n in 20 56; do
	ref=4051; [ $n = 56 ] && ref=4151
	expect_exit 0 nesa-route -t 1 --format json -m "$M/cifar/resnet$n.json" \
		--weights "$NESA_DATA/cifar10_resnet_akamaster/resnet$n.safetensors" --layout nhwc \
		--classify "$cf/images_5000x32x32x3.u8" "$cf/labels_5000.u8" &&
		check "resnet$n" $ref "$T/out"
done

# A wrong layout still runs but the label file must match the images.
expect_exit 65 nesa-route -m "$M/cifar/resnet20.json" \
	--weights "$NESA_DATA/cifar10_resnet_akamaster/resnet20.safetensors" \
	--classify "$cf/images_5000x32x32x3.u8" "$mn/t10k-labels-idx1-ubyte.gz"
grep -q "10000 labels for 5000 images" "$T/err" || fail_ "label count mismatch not explained: $(cat "$T/err")"
exit $fail
