package scripts_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func scripts(t *testing.T) []string {
	t.Helper()
	list, err := filepath.Glob("*.sh")
	if err != nil || len(list) == 0 {
		t.Fatalf("no scripts found: %v", err)
	}
	return list
}

// TestStrict checks that every script parses and stops at the first failing
// command, including a failing stage of a pipe.
func TestStrict(t *testing.T) {
	for _, f := range scripts(t) {
		t.Run(f, func(t *testing.T) {
			if out, err := exec.Command("bash", "-n", f).CombinedOutput(); err != nil {
				t.Fatalf("bash -n: %v\n%s", err, out)
			}
			if f == "lib.sh" { // sourced, never run: its callers set the options
				return
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`(?m)^set -euo pipefail$`).Match(b) {
				t.Errorf("%s does not `set -euo pipefail`", f)
			}
		})
	}
}

// TestInstallsOnlyUpFront checks that packages are installed by the scripts
// that prepare the machine, never by one that runs in the middle of a test.
func TestInstallsOnlyUpFront(t *testing.T) {
	installers := map[string]bool{"deps.sh": true, "docker-up.sh": true, "redis-up.sh": true, "base-image.sh": true}
	// A RUN line is an image's build step, not an install on this machine.
	install := regexp.MustCompile(`^[^#]*apt-get.*\binstall\b`)
	for _, f := range scripts(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if !installers[f] && install.MatchString(line) && !strings.Contains(line, "RUN ") {
				t.Errorf("%s installs packages (%q); only %v may", f, strings.TrimSpace(line), installers)
			}
		}
	}
}

// TestNoRegistryAddress checks that no script, Dockerfile or compose file
// names a package registry or mirror: they come from the host's own
// configuration.
func TestNoRegistryAddress(t *testing.T) {
	hosts := regexp.MustCompile(`(?i)(deb\.debian\.org|security\.debian\.org|proxy\.golang\.org|registry\.npmjs\.org|pypi\.org|registry-1\.docker\.io|index\.docker\.io)`)
	files := scripts(t)
	for _, f := range []string{"Dockerfile.api", "Dockerfile.executor", "docker-compose.yml", "executor-image/packages.txt"} {
		files = append(files, filepath.Join("..", f))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if m := hosts.Find(b); m != nil {
			t.Errorf("%s names a registry: %s", f, m)
		}
	}
}

// lib runs a bash snippet with scripts/lib.sh sourced and returns its
// output and error.
func lib(t *testing.T, env []string, snippet string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", "-c", "set -euo pipefail; . ./lib.sh; log() { echo \"log: $*\" >&2; }; "+snippet)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func needDocker(t *testing.T) {
	t.Helper()
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but no Docker engine answers: %v (run scripts/docker-up.sh)", err)
		}
		t.Skipf("no Docker engine: %v", err)
	}
}

func imageExists(tag string) bool {
	return exec.Command("docker", "image", "inspect", tag).Run() == nil
}

// TestImageCache checks the cache rules on a real engine: an empty image is
// never reused even with the right hash, a failing producer leaves no image
// behind (not even under its temporary tag), and a valid image is reused
// only with its own hash and not under FRESH=1.
func TestImageCache(t *testing.T) {
	needDocker(t)
	var b [6]byte
	rand.Read(b[:])
	repo := "codegw-test/cache-" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		out, _ := exec.Command("docker", "image", "ls", "-q", repo).Output()
		if ids := strings.Fields(string(out)); len(ids) > 0 {
			exec.Command("docker", append([]string{"image", "rm", "-f"}, ids...)...).Run()
		}
		out, _ = exec.Command("docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").Output()
		for _, tag := range strings.Fields(string(out)) {
			if strings.HasPrefix(tag, repo) {
				exec.Command("docker", "image", "rm", "-f", tag).Run()
			}
		}
	})

	t.Run("empty image with the right hash is stale", func(t *testing.T) {
		tag := repo + ":empty"
		out, err := lib(t, nil, `tar -c -T /dev/null | docker import --change "LABEL $HASH_LABEL=h1" - `+tag+` >/dev/null
			if image_current `+tag+` h1; then echo reused; else echo stale; fi`)
		if err != nil || strings.TrimSpace(lastLine(out)) != "stale" {
			t.Fatalf("an empty image was judged current: %v\n%s", err, out)
		}
	})

	t.Run("failing producer leaves nothing", func(t *testing.T) {
		tag := repo + ":broken"
		// The producer writes a little, then fails: the import stage alone
		// would succeed on what it got, as happened with the Go image.
		out, err := lib(t, nil, `import_image `+tag+` h2 sh -c 'tar -c -T /dev/null; exit 2'`)
		if err == nil {
			t.Fatalf("import_image succeeded with a failing producer:\n%s", out)
		}
		if imageExists(tag) {
			t.Fatalf("%s exists after a failed import", tag)
		}
		listing, _ := exec.Command("docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").Output()
		if strings.Contains(string(listing), repo+"-building") {
			t.Fatalf("a temporary image was left:\n%s", listing)
		}
	})

	t.Run("valid image reused only with its hash", func(t *testing.T) {
		tag := repo + ":good"
		dir := t.TempDir()
		blob := make([]byte, 2<<20)
		rand.Read(blob)
		if err := os.WriteFile(filepath.Join(dir, "blob"), blob, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := lib(t, nil, `import_image `+tag+` h3 tar -C `+dir+` -c .
			for h in h3 other; do if image_current `+tag+` $h; then echo "$h reused"; else echo "$h stale"; fi; done
			if FRESH=1 image_current `+tag+` h3; then echo "fresh reused"; else echo "fresh stale"; fi`)
		if err != nil {
			t.Fatalf("import: %v\n%s", err, out)
		}
		for _, want := range []string{"h3 reused", "other stale", "fresh stale"} {
			if !strings.Contains(out, want) {
				t.Errorf("want %q in:\n%s", want, out)
			}
		}
	})
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
