"""The maths, pure functions of tensors: hooks on a layer (:mod:`.taps`), the one shared pass that makes
every method's map (:mod:`.explain`), guided backpropagation (:mod:`.guided`) and the methods registry
(:mod:`.methods`, torch-free: the CLI reads it before torch is imported)."""
