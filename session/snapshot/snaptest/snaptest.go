// Package snaptest gives tests the S3-compatible server that
// scripts/s3-up.sh starts (SeaweedFS, built from its Go module): a bucket
// and a key prefix of the test's own, removed when it ends.
package snaptest

import (
	"context"
	"net/url"
	"os"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/codegw/codegw"
)

// Config locates the test's bucket and prefix (snapshot.S3Config's fields).
type Config struct {
	Endpoint, Bucket, Prefix, Region, AccessKey, SecretKey string
}

// S3 returns the configuration of a fresh prefix in the test bucket of the
// server named by CODEGW_S3_ENDPOINT, CODEGW_S3_ACCESS_KEY and
// CODEGW_S3_SECRET_KEY (what scripts/s3-up.sh prints). Without a server the
// test is skipped, or fails under CI=true.
func S3(t testing.TB) Config {
	t.Helper()
	endpoint := os.Getenv("CODEGW_S3_ENDPOINT")
	if endpoint == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CODEGW_S3_ENDPOINT is not set: scripts/s3-up.sh starts the S3-compatible server the tests need")
		}
		t.Skip("no S3-compatible server: run scripts/s3-up.sh and export what it prints")
	}
	cfg := Config{Endpoint: endpoint, Bucket: "codegw-test", Prefix: "t-" + codegw.NewID()[:12] + "/",
		Region: "us-east-1", AccessKey: os.Getenv("CODEGW_S3_ACCESS_KEY"), SecretKey: os.Getenv("CODEGW_S3_SECRET_KEY")}
	host, secure := endpoint, false
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		host, secure = u.Host, u.Scheme == "https"
	}
	c, err := minio.New(host, &minio.Options{Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""), Secure: secure, Region: cfg.Region})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if ok, err := c.BucketExists(ctx, cfg.Bucket); err != nil {
		t.Fatalf("S3 server at %s: %v", endpoint, err)
	} else if !ok {
		if err := c.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region}); err != nil {
			if ok, _ := c.BucketExists(ctx, cfg.Bucket); !ok {
				t.Fatalf("make bucket: %v", err)
			}
		}
	}
	t.Cleanup(func() {
		for o := range c.ListObjects(ctx, cfg.Bucket, minio.ListObjectsOptions{Prefix: cfg.Prefix, Recursive: true}) {
			if o.Err == nil {
				c.RemoveObject(ctx, cfg.Bucket, o.Key, minio.RemoveObjectOptions{})
			}
		}
	})
	return cfg
}
