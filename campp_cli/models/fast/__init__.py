"""CPU fast paths swapped into a loaded model: prepacked convolutions, linear layers with a sparse input
gradient (see :func:`campp_cli.models.loading.prepare_module`)."""
