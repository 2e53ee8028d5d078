"""Few-step samplers with learnable parts (plain torch). The methods arrive with their issues."""
