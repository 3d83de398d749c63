"""Distillation: teacher labels (:mod:`.teach`), a LoRA fine-tune (:mod:`.finetune`, extra ``train``)
and the adapters that carry it onto the device (:mod:`.adapters`, :mod:`.convert`)."""
