// Package agentvm holds the QEMU tests of cpinit's integrations with the
// update agents (issue 19): the real rauc, swupdate and mender from
// Debian's packages, installed by debootstrap into a Debian system slot
// (qemutests.MakeDebianSlotImage), run an update on the simulated A/B
// device, which commits or rolls back userdata, checked with exact
// manifests from the host.
package agentvm
