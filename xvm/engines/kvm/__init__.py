"""kvm package."""
