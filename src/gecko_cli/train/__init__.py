"""Training shared by `gecko pretrain` and `gecko finetune`: config, losses, run, save, distributed."""
