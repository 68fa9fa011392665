package dist

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// The Mender integration (dist/mender, docs/mender.md). The QEMU tests
// that run the real mender with it are in qemu-tests/agentvm.

// menderInstalled is what dist/mender/install.sh installs (mode 0: a
// symlink, to the target given).
var menderInstalled = map[string]inst{
	"usr/share/cpinit/mender/ArtifactInstall_Enter_50_cpinit":          {0o755, ""},
	"usr/share/cpinit/mender/ArtifactCommit_Enter_50_cpinit":           {0o755, ""},
	"usr/share/cpinit/mender/ArtifactRollback_Enter_50_cpinit":         {0o755, ""},
	"usr/share/cpinit/mender/ArtifactFailure_Enter_50_cpinit":          {0, "ArtifactRollback_Enter_50_cpinit"},
	"usr/lib/systemd/system/mender-commit.service":                     {0o644, ""},
	"etc/systemd/system/multi-user.target.wants/mender-commit.service": {0, "/usr/lib/systemd/system/mender-commit.service"},
}

func TestMenderInstallTree(t *testing.T) {
	dest := t.TempDir()
	if out, err := exec.Command("sh", "mender/install.sh", dest).CombinedOutput(); err != nil {
		t.Fatalf("mender/install.sh: %v\n%s", err, out)
	}
	checkTree(t, "mender/install.sh", dest, menderInstalled)
}

// TestMenderScripts: Mender's state script names (State_Action_NN_name,
// statescript/executor.go's pattern), valid sh.
func TestMenderScripts(t *testing.T) {
	name := regexp.MustCompile(`^Artifact(Install|Commit|Rollback|Failure)_Enter_[0-9]{2}_[a-z]+$`)
	for _, s := range []string{"ArtifactInstall_Enter_50_cpinit", "ArtifactCommit_Enter_50_cpinit", "ArtifactRollback_Enter_50_cpinit", "ArtifactFailure_Enter_50_cpinit"} {
		if !name.MatchString(s) {
			t.Errorf("%s: not a Mender state script name", s)
		}
		if out, err := exec.Command("sh", "-n", filepath.Join("mender", s)).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", s, err, out)
		}
	}
}

func TestMenderUnitVerify(t *testing.T) {
	analyze, _ := needSystemd(t)
	root := unitRoot(t)
	if out, err := exec.Command("sh", "mender/install.sh", root).CombinedOutput(); err != nil {
		t.Fatalf("mender/install.sh: %v\n%s", err, out)
	}
	writeFile(t, filepath.Join(root, "usr/bin/mender"), nil, 0o755)
	if out, err := verify(t, analyze, root, "mender-commit.service"); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestDocQuotesMenderFiles(t *testing.T) {
	docQuotes(t, "../docs/mender.md", "mender/ArtifactInstall_Enter_50_cpinit", "mender/ArtifactCommit_Enter_50_cpinit",
		"mender/ArtifactRollback_Enter_50_cpinit", "mender/mender-commit.service")
}
