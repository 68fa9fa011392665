// Command cpinit checkpoints userdata across A/B updates. Placeholder.
package main

func main() {}
