"""What relayed requests cost: token counts priced from a pinned snapshot of a public price
table. Imports nothing else of the relay."""
