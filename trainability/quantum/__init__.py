"""Trainability of parameterized quantum circuits, in pure JAX (no quantum SDK).

* `statevector`: the simulator. A state is a complex (2,) * n array; gates are
  tensor contractions (single-qubit gates as elementwise arithmetic on the
  state's two halves, CZ ladders as one diagonal); Pauli strings,
  expectations, Pauli rotations. Everything jits, differentiates and vmaps.
* `circuits`: circuits as pure (init, apply) pairs with params as a dict of
  layers: Cerezo et al.'s R_x layer, a hardware-efficient ansatz, McClean et
  al.'s random-rotation circuit, global and local costs, and a data
  re-uploading classifier that is a `models.Model`, so the library's
  scheduler and indicators take it unchanged.
* `plateaus`: gradient variance over random inits in one vmapped program,
  exponential-decay fits, deep random circuits of given generators, Haar
  states.
* `dla`: Lie closures of Pauli-string generators (dimension and basis) and
  the variance they predict (Ragone et al. / Fontana et al.).

Imports nothing but jax and numpy (`circuits.reuploading_classifier` also
loads `trainability.models`).
"""
