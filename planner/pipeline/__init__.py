"""The planning pipeline, one way: domain (read) -> rules -> prepare -> bounds / certificate ->
solver -> layout -> render (write), with plan orchestrating it, explain for a refusal,
ties and greedy (libvirt's own algorithm) for a tie with libvirt, and metrics and show to
measure and draw a layout. It never imports a command."""
