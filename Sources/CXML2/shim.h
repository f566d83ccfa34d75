// libxml2 for XML settings validation. Only the settings code imports this module.
#ifndef C_XML2_SHIM_H
#define C_XML2_SHIM_H
#include <libxml/parser.h>
#include <libxml/xmlschemas.h>
#endif
