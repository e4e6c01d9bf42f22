"""Networks: the hyper-coder, the quantiser, the schedule maths and the composed OSCAR model."""
