"""Reading and writing domain XML: parsing, the input errors, and pciplan's own serializer that
copies unchanged text from the input."""
