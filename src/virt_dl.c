/*
 * virt_dl.c — the libvirt and libxml2 calls of virt.c for replctl, loaded
 * when first used (dlopen of libvirt.so.0, libxml2.so.2) instead of
 * linked.
 *
 * Linking libvirt brings some fifty shared libraries (GnuTLS, GLib, ...)
 * whose loading and constructors cost about 20 ms at every start of
 * replctl, libxml2 (with ICU and libstdc++) about 2 ms more, though only
 * `replctl discover` uses them.  replctl is linked with this file in place
 * of -lvirt -lxml2: each function below has the library's name and
 * prototype and calls the real one.  When a library cannot be loaded, the
 * calls fail (NULL, -1) and virGetLastErrorMessage() says why.  replicad
 * links both itself and does not use this file.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlstring.h>

static struct lib {
	const char	*soname, *what;
	void		*h;
	pthread_once_t	 once;
} lib_virt = { "libvirt.so.0", "libvirt", NULL, PTHREAD_ONCE_INIT },
  lib_xml = { "libxml2.so.2", "libxml2", NULL, PTHREAD_ONCE_INIT };
static char		 why[512];

static void
load(struct lib *l)
{
	if ((l->h = dlopen(l->soname, RTLD_NOW | RTLD_LOCAL)) == NULL)
		snprintf(why, sizeof(why), "cannot load %s: %s", l->what,
		    dlerror());
}

static void load_virt(void) { load(&lib_virt); }
static void load_xml(void) { load(&lib_xml); }

/* The real function called name, or NULL (why says so). */
static void *
sym(struct lib *l, const char *name)
{
	pthread_once(&l->once, l == &lib_virt ? load_virt : load_xml);
	if (l->h == NULL)
		return NULL;
	void *f = dlsym(l->h, name);
	if (f == NULL)
		snprintf(why, sizeof(why), "%s has no %s", l->what, name);
	return f;
}

/* A function of library l: the real one, or fail with the value bad. */
#define CALL_IN(l, ret, name, params, args, bad)			\
ret name params								\
{									\
	static ret (*f) params;						\
	if (f == NULL && (f = (ret (*) params)sym(&l, #name)) == NULL)	\
		return bad;						\
	return f args;							\
}
#define CALL(ret, name, params, args, bad)				\
	CALL_IN(lib_virt, ret, name, params, args, bad)

CALL(int, virInitialize, (void), (), -1)
CALL(virConnectPtr, virConnectOpen, (const char *name), (name), NULL)
CALL(int, virConnectClose, (virConnectPtr c), (c), -1)
CALL(int, virConnectListAllDomains, (virConnectPtr c, virDomainPtr **d,
    unsigned int flags), (c, d, flags), -1)
CALL(virDomainPtr, virDomainLookupByName, (virConnectPtr c, const char *n),
    (c, n), NULL)
CALL(virDomainPtr, virDomainDefineXML, (virConnectPtr c, const char *xml),
    (c, xml), NULL)
CALL(int, virDomainCreate, (virDomainPtr d), (d), -1)
CALL(int, virDomainDestroy, (virDomainPtr d), (d), -1)
CALL(int, virDomainFree, (virDomainPtr d), (d), -1)
CALL(int, virDomainGetAutostart, (virDomainPtr d, int *a), (d, a), -1)
CALL(int, virDomainSetAutostart, (virDomainPtr d, int a), (d, a), -1)
CALL(const char *, virDomainGetName, (virDomainPtr d), (d), NULL)
CALL(char *, virDomainGetXMLDesc, (virDomainPtr d, unsigned int flags),
    (d, flags), NULL)
CALL(int, virDomainHasManagedSaveImage, (virDomainPtr d, unsigned int flags),
    (d, flags), -1)
CALL(int, virDomainManagedSaveRemove, (virDomainPtr d, unsigned int flags),
    (d, flags), -1)
CALL(int, virDomainIsActive, (virDomainPtr d), (d), -1)
CALL(int, virDomainIsPersistent, (virDomainPtr d), (d), -1)
CALL(int, virDomainShutdown, (virDomainPtr d), (d), -1)
CALL(int, virDomainUndefineFlags, (virDomainPtr d, unsigned int flags),
    (d, flags), -1)
CALL(int, virGetLastErrorCode, (void), (), VIR_ERR_INTERNAL_ERROR)

const char *
virGetLastErrorMessage(void)
{
	static const char *(*f)(void);
	if (f == NULL && (f = (const char *(*)(void))
	    sym(&lib_virt, "virGetLastErrorMessage")) == NULL)
		return why;
	/* A call that failed here never reached libvirt. */
	return why[0] != '\0' ? why : f();
}

void
virSetErrorFunc(void *arg, virErrorFunc fn)
{
	static void (*f)(void *, virErrorFunc);
	if (f == NULL && (f = (void (*)(void *, virErrorFunc))
	    sym(&lib_virt, "virSetErrorFunc")) == NULL)
		return;
	f(arg, fn);
}

/* libxml2 */
CALL_IN(lib_xml, xmlDocPtr, xmlReadMemory, (const char *buf, int size,
    const char *url, const char *enc, int options),
    (buf, size, url, enc, options), NULL)
CALL_IN(lib_xml, xmlNodePtr, xmlDocGetRootElement, (const xmlDoc *doc), (doc),
    NULL)
CALL_IN(lib_xml, xmlChar *, xmlGetProp, (const xmlNode *n, const xmlChar *name),
    (n, name), NULL)
CALL_IN(lib_xml, xmlChar *, xmlNodeGetContent, (const xmlNode *n), (n), NULL)
CALL_IN(lib_xml, int, xmlStrcmp, (const xmlChar *a, const xmlChar *b), (a, b),
    -1)

void
xmlInitParser(void)
{
	static void (*f)(void);
	if (f == NULL && (f = (void (*)(void))sym(&lib_xml, "xmlInitParser")) ==
	    NULL)
		return;
	f();
}

void
xmlFreeDoc(xmlDocPtr doc)
{
	static void (*f)(xmlDocPtr);
	if (f == NULL && (f = (void (*)(xmlDocPtr))sym(&lib_xml,
	    "xmlFreeDoc")) == NULL)
		return;
	f(doc);
}

/* libxml2's xmlFree is a variable holding its free function (what
 * xmlGetProp() and xmlNodeGetContent() allocated with). */
static void
free_xml(void *p)
{
	xmlFreeFunc *real = sym(&lib_xml, "xmlFree");
	if (real != NULL && *real != NULL)
		(*real)(p);
}

xmlFreeFunc xmlFree = free_xml;
