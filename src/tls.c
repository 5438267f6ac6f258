/*
 * tls.c — OpenSSL 3 contexts for both roles and peer identity extraction.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "xmalloc.h"

const char *
tls_last_error(void)
{
	static __thread char buf[256];
	unsigned long e = ERR_get_error();
	if (e == 0)
		return "unknown TLS error";
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return buf;
}

void
tls_error_string(unsigned long e, char *buf, size_t bufsz)
{
	/* OpenSSL 3 packs errno values of failed system calls. */
	if (ERR_SYSTEM_ERROR(e))
		snprintf(buf, bufsz, "%s", strerror(ERR_GET_REASON(e)));
	else
		ERR_error_string_n(e, buf, bufsz);
}

SSL_CTX *
tls_ctx_new(int server, const char *cert, const char *key, const char *ca,
    char *err, size_t errsz)
{
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() :
	    TLS_client_method());
	if (ctx == NULL) {
		snprintf(err, errsz, "cannot create TLS context: %s",
		    tls_last_error());
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	/* A peer that closes without close_notify is an ordinary error for
	 * us, handled by the protocol (no ACK means no commit). */
	SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF |
	    SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		snprintf(err, errsz, "tls_cert %s: %s", cert, tls_last_error());
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		snprintf(err, errsz, "tls_key %s: %s", key, tls_last_error());
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errsz, "tls_key %s does not match tls_cert %s",
		    key, cert);
		goto fail;
	}
	if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		snprintf(err, errsz, "tls_ca %s: %s", ca, tls_last_error());
		goto fail;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
	    SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	if (server) {
		static const unsigned char sid[] = "replicad";
		SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static int
host_name_ok(const char *s, size_t n)
{
	if (n == 0 || n > 255)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && strchr(".-_", s[i]) == NULL)
			return 0;
	return 1;
}

static int
add_name(char *names[TLS_MAX_NAMES], int n, const char *s, size_t len)
{
	if (n >= TLS_MAX_NAMES || !host_name_ok(s, len))
		return n;
	names[n] = xmalloc(len + 1);
	memcpy(names[n], s, len);
	names[n][len] = '\0';
	return n + 1;
}

int
tls_peer_names(SSL *ssl, char *names[TLS_MAX_NAMES])
{
	int n = 0, dns = 0;
	X509 *x = SSL_get0_peer_certificate(ssl);
	if (x == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
		return 0;

	GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL,
	    NULL);
	for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
		if (g->type != GEN_DNS)
			continue;
		dns++;
		const unsigned char *p = ASN1_STRING_get0_data(g->d.dNSName);
		int len = ASN1_STRING_length(g->d.dNSName);
		if (len > 0 && memchr(p, '\0', (size_t)len) == NULL)
			n = add_name(names, n, (const char *)p, (size_t)len);
	}
	GENERAL_NAMES_free(sans);
	/* The common name counts only in a certificate with no DNS name
	 * (RFC 6125 6.4.4, as OpenSSL's host check does): a CA that copies
	 * the CN of a request as it is must not let a host claim another's
	 * identity through it. */
	if (dns > 0)
		return n;

	X509_NAME *subj = X509_get_subject_name(x);
	int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
	if (idx >= 0) {
		ASN1_STRING *cn = X509_NAME_ENTRY_get_data(
		    X509_NAME_get_entry(subj, idx));
		unsigned char *utf8 = NULL;
		int len = ASN1_STRING_to_UTF8(&utf8, cn);
		if (len > 0 && memchr(utf8, '\0', (size_t)len) == NULL)
			n = add_name(names, n, (const char *)utf8, (size_t)len);
		OPENSSL_free(utf8);
	}
	return n;
}

void
tls_names_free(char *names[TLS_MAX_NAMES], int n)
{
	for (int i = 0; i < n; i++)
		free(names[i]);
}
