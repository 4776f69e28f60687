"""Build the myositis-qa index: load sources, chunk them, embed, store."""
