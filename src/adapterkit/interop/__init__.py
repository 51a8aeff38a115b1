"""Interoperability: peft LoRA in and out (peft.py), AdapterHub adapters in (adapterhub.py), Hugging Face Hub
names and uploads (hub.py) and adapter cards (card.py). See docs/format.md."""
