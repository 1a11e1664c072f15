"""What the API offers, one module per collection (``/v1/jobs``, ``/v1/datasets``, …), each a
small class over the transport in ``client.http`` and reached as an attribute of
``GristmillClient`` (``client.jobs``). A new collection is a module here and one attribute."""
