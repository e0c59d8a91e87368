package docker

import (
	"testing"
)

// Two provisioners on one host never hand out the same kernel uid: each
// leases its own block, and a closed one's block is free again.
func TestKernelUIDLeases(t *testing.T) {
	a := &Provisioner{cfg: Config{KernelUID: 300000}}
	b := &Provisioner{cfg: Config{KernelUID: 300000}}
	ua, err := a.takeUID()
	if err != nil {
		t.Fatal(err)
	}
	ub, err := b.takeUID()
	if err != nil {
		t.Fatal(err)
	}
	if a.uidBase == b.uidBase || ua == ub {
		t.Fatalf("two provisioners share a uid block: %d (%d) and %d (%d)", a.uidBase, ua, b.uidBase, ub)
	}
	if ua < 300000 || ub < 300000 || ua-a.uidBase >= uidBlock || ub-b.uidBase >= uidBlock {
		t.Errorf("uids %d, %d outside their blocks %d, %d", ua, ub, a.uidBase, b.uidBase)
	}
	// Within a block: distinct while live, reused once released.
	ua2, _ := a.takeUID()
	if ua2 == ua {
		t.Errorf("a live uid handed out twice: %d", ua)
	}
	a.releaseUID(ua)
	if again, _ := a.takeUID(); again != ua {
		t.Errorf("released uid %d not reused (got %d)", ua, again)
	}
	base := a.uidBase
	a.releaseUIDLease()
	b.releaseUIDLease()
	c := &Provisioner{cfg: Config{KernelUID: 300000}}
	defer c.releaseUIDLease()
	if _, err := c.takeUID(); err != nil {
		t.Fatal(err)
	}
	if c.uidBase != base && c.uidBase > base {
		t.Errorf("a released block (%d) was not taken again (got %d)", base, c.uidBase)
	}
}
