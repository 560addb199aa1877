"""Pure routing policies: `pick(request, snapshot) -> Pick | Shed`, no I/O, no clock."""
